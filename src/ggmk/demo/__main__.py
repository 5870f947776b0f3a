"""The main job (``make demo``): boot the CPU kernel with a small multi-module workload, run it
for a few seconds and print a one-screen summary."""
from ggmk.demo.workload import main

if __name__ == "__main__":
    raise SystemExit(main())

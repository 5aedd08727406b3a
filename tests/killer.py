"""Run a collection in this process and SIGKILL it at a chosen point (used by test_resume).

usage: python killer.py OUT MODE UNIT  (MODE: after_unit | mid_write | sigint)
- after_unit: killed right after unit UNIT's checkpoint was written;
- mid_write: killed inside unit UNIT's write, after its data chunks and before ``valid``;
- sigint: runs the real CLI (``dynsparse collect``) and sends itself SIGINT (Ctrl-C) inside unit
  UNIT's write; exits with the CLI's status.
"""

import os
import signal
import sys

from dynsparse import collect, dataset, jaxcache

from resume_config import CLI_ARGS, CONFIG


def main() -> None:
    out, mode, unit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    jaxcache.enable()

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "sigint":
        from dynsparse import cli

        # Ctrl-C in a terminal raises KeyboardInterrupt; a process started in the background by a
        # non-interactive shell (as CI may start the test run) inherits SIGINT ignored: undo that.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        original = dataset.write_unit

        def write_unit(path, layout, u, arrays):
            if u == unit:
                os.kill(os.getpid(), signal.SIGINT)
            original(path, layout, u, arrays)

        dataset.write_unit = write_unit
        sys.exit(cli.main([*CLI_ARGS, "--out", out]))

    if mode == "mid_write":
        import zarr

        original = dataset.write_unit

        def write_unit(path, layout, u, arrays):
            if u == unit:
                group = zarr.open_group(str(path), mode="r+", zarr_format=2)
                es, ts = layout.unit_slices(u)
                for name in ("state", "J_s", "J_a"):
                    group[name][es, ts] = arrays[name]
                die()
            original(path, layout, u, arrays)

        dataset.write_unit = write_unit

    def on_progress(p):
        if mode == "after_unit" and p.unit == unit + 1:
            die()

    collect.collect(CONFIG, out, on_progress=on_progress)


if __name__ == "__main__":
    main()

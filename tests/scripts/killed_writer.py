"""Writes half a file through atomic_output to argv[1], says so, and waits to be killed."""

import sys
import time

from reann_nequip._files import atomic_output

with atomic_output(sys.argv[1], "wb") as stream:
    stream.write(b"half a model")
    stream.flush()
    print("writing", flush=True)
    time.sleep(600)

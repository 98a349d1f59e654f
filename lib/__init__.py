"""cifar-cnn-book's library: data, models, training, tracking, the runs cache.

Notebooks import from here; nothing here imports a notebook.
"""

__version__ = "0.1.0"


def _load_triton_before_tensorflow() -> None:
    """TensorFlow and triton (which torch loads lazily, at the first optimiser) each
    bundle their own LLVM; loading triton after TensorFlow kills the process with a
    segmentation fault (seen here; PythonOT/POT#839). TensorBoard imports TensorFlow
    where it is installed (chapter 8's extra), so load triton first."""
    import importlib.util

    try:
        if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("triton"):
            import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton must not stop the book; torch reports it
        pass


_load_triton_before_tensorflow()


def import_tensorflow_quietly(required: bool = False):
    """Import TensorFlow, if installed, with the process's stderr silenced: its C++
    start-up lines (oneDNN, CPU instructions, absl) cannot be turned off by any setting
    and would land in chapter pages. TensorBoard imports TensorFlow where it is
    installed, so :mod:`lib.track` calls this before using TensorBoard. Returns the
    module, or None when TensorFlow is not installed or does not import (then
    TensorBoard uses its own stub); with ``required`` an ImportError raises."""
    import importlib.util
    import os
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if not importlib.util.find_spec("tensorflow"):
        return None
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow
    except ImportError:
        if required:
            raise
        return None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return tensorflow

"""cifar-cnn-book's library: data, models, training, tracking, the runs cache.

Notebooks import from here; nothing here imports a notebook.
"""

__version__ = "0.1.0"


def _load_triton_before_tensorflow() -> None:
    """TensorFlow and triton (which torch loads lazily, at the first optimiser) each
    bundle their own LLVM; loading triton after TensorFlow kills the process with a
    segmentation fault (seen here; PythonOT/POT#839). TensorBoard imports TensorFlow
    where it is installed (chapter 7's extra), so load triton first."""
    import importlib.util

    try:
        if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("triton"):
            import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton must not stop the book; torch reports it
        pass


_load_triton_before_tensorflow()

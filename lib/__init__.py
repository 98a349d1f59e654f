"""cifar-cnn-book's library: data, models, training, tracking, the runs cache.

Notebooks import from here; nothing here imports a notebook.
"""

__version__ = "0.1.0"

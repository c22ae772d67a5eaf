"""The application: typed config, presets, the builder from config to modules, tasks, the
trainer, checkpoints and run folders, the sweep, plots and the ``iresnet`` command line.

It imports the library; the library never imports it.
"""

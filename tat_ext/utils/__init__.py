"""Helpers shared by tat_ext's subpackages, one module per concern:

    files     atomic file writes (temp file, fsync, rename, directory fsync, file mode), output
              folders proven writable before long work
    devices   ``--device`` parsing: cpu, cuda, cuda:N, auto
    progress  the tqdm progress bar and printing around it
    plots     headless matplotlib and atomic PNG files
    parsing   argparse types: comma-separated lists, positive integers
    machine   the versions and hardware recorded with every result
"""

"""What every stage uses, importing nothing of the others: paths and environment, files, run folders, processes, device."""

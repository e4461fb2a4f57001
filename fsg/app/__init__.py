"""Files in, results out, and the public Python API: sample runs (npz, PNG folders, grids), edit and interpolation
runs, evaluation runs, training from a recipe, the demo and PaGoDA's encode stage."""

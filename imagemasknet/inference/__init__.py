"""One scan (or a stream of them) in, a decision out: the Predictor, familiarity, Grad-CAM, reports."""

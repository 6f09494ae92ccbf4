"""make_figures.py's figures, by topic: drawing (shared plotting pieces), miou (mIoU against severity),
structure (the clean logit matrices), reliability (calibration and the two readings), val_images (figures drawn
from val images and the models' predictions). Each ``fig_*`` takes make_figures.py's context dict and returns a
matplotlib figure; make_figures.py reads the inputs, checks them, and writes the files."""

"""The data side of the corruption sweep: each val image under each condition, decoded and corrupted in the
loader's worker processes (or read from a dump_voc_c.py folder), in batches that keep to one condition."""
import numpy as np
import torch

from common import vocc
from common.corruptions import DEFAULT_CODE, corrupt_image
from common.data import eval_sample


class ConditionImages(torch.utils.data.Dataset):
    """Item k = image ``items[k][1]`` under condition ``conditions[items[k][0]]``, as uint8 arrays.

    Runs in the loader's worker processes, which is where the corruption cost is spread out.
    """

    def __init__(self, dataset, indices, conditions, protocol, size, voc_c=None, code=DEFAULT_CODE):
        self.dataset, self.indices, self.conditions = dataset, indices, conditions
        self.protocol, self.size, self.voc_c, self.code = protocol, size, voc_c, code

    def __len__(self):
        return len(self.conditions) * len(self.indices)

    def __getitem__(self, k):
        cond, pos = divmod(k, len(self.indices))
        corruption, severity = self.conditions[cond]
        index = self.indices[pos]
        image_id, image, label = eval_sample(self.dataset, index, self.protocol, self.size)
        if severity > 0:
            dumped = None
            if self.voc_c is not None:
                dumped = vocc.read_png(vocc.image_path(self.voc_c, corruption, severity, image_id), image.shape)
            image = dumped if dumped is not None else corrupt_image(image, image_id, corruption, severity,
                                                                                self.code)
        image = np.require(image, requirements="W")  # the library returns read-only arrays for pixelate and jpeg
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label), "cond": cond, "pos": pos}


class ConditionBatches(torch.utils.data.Sampler):
    """Batches that never straddle two conditions, conditions in order."""

    def __init__(self, n_conditions, n_images, batch_size):
        self.batches = [list(range(c * n_images + s, c * n_images + min(s + batch_size, n_images)))
                        for c in range(n_conditions) for s in range(0, n_images, batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

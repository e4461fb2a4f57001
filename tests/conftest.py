import os

os.environ.setdefault("OMP_NUM_THREADS", "1")   # tiny tensors: one thread is fastest and avoids oversubscription

import torch  # noqa: E402

torch.set_num_threads(1)

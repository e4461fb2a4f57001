import os

os.environ.setdefault("OMP_NUM_THREADS", "1")   # tiny tensors: one thread is fastest and avoids oversubscription

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def vae_folder(tmp_path_factory):
    """A tiny randomly initialised SD-VAE-shaped AutoencoderKL saved as a local folder (never a download)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                    layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16)
    folder = tmp_path_factory.mktemp("vae")
    model.save_pretrained(folder)
    return folder

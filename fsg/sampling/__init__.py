"""Samplers and editors on a denoiser: tensors in, tensors out (no files, no data sources).

`SAMPLERS` is the registry: a sampler's name (`fsg sample --sampler NAME`, a model's default) picks its
`SamplerSpec`. A new sampler is its own module with a spec, plus one line here.
"""

from fsg.sampling import bridges, ddm, flowmap, pagoda, samplers, trigflow

SAMPLERS = {
    "heun": samplers.HEUN,
    "euler": samplers.EULER,
    "consistency": samplers.CONSISTENCY,
    "hybrid": bridges.HYBRID,
    "dbim": bridges.DBIM,
    "dbim2": bridges.DBIM2,
    "dbim3": bridges.DBIM3,
    "cdbm": bridges.CDBM,
    "ddm": ddm.DDM,
    "ddm-heun": ddm.DDM_HEUN,
    "pagoda": pagoda.PAGODA,
    "scm": trigflow.SCM,
    "flowmap": flowmap.FLOWMAP,
}

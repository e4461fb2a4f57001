"""Every registered method passes the method contract (tests/contracts.py), and a new method needs no other edit."""

from dataclasses import dataclass
from typing import Literal

import pytest

from fsg.core.process import forward_sample, randn
from fsg.methods import METHODS
from fsg.methods.base import Method
from tests.contracts import check_method_contract


@pytest.mark.parametrize("name", list(METHODS))
def test_method_contract(name):
    check_method_contract(METHODS[name])


@dataclass(frozen=True)
class ToyConfig:
    name: Literal["toy"] = "toy"


class ToyMethod(Method):
    """x0-prediction at one fixed noise level: the smallest method there is."""

    name, config = "toy", ToyConfig

    def loss(self, nets, batch, step, gen):
        x0 = batch["x"]
        t = x0.new_full((x0.shape[0],), 1.0)
        x_t = forward_sample(self.process, x0, t, randn(x0.shape, gen, x0.device))
        mse = (nets["model"](x_t, t) - x0).pow(2).mean()
        return {"model": mse}, {"mse": mse.item()}


def test_a_toy_method_registered_in_one_line_passes_the_contract(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", ToyMethod)
    check_method_contract(METHODS["toy"])

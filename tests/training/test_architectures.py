"""The three builders: shapes, parameter counts, and what makes each style itself."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from digit_contract import Style
from training.architectures import ARCHITECTURES, LayerOptions, SubclassedCNN

# The classic stack's shapes (conv 3x3 valid, 2x2 pooling), with normalisation (version 4).
SEQUENTIAL_TABLE = [
    ("Conv2D", (None, 26, 26, 32), 288),
    ("BatchNormalization", (None, 26, 26, 32), 128),
    ("Activation", (None, 26, 26, 32), 0),
    ("MaxPooling2D", (None, 13, 13, 32), 0),
    ("Conv2D", (None, 11, 11, 64), 18432),
    ("BatchNormalization", (None, 11, 11, 64), 256),
    ("Activation", (None, 11, 11, 64), 0),
    ("MaxPooling2D", (None, 5, 5, 64), 0),
    ("Conv2D", (None, 3, 3, 128), 73728),
    ("BatchNormalization", (None, 3, 3, 128), 512),
    ("Activation", (None, 3, 3, 128), 0),
    ("Flatten", (None, 1152), 0),
    ("Dense", (None, 128), 147584),
    ("Dropout", (None, 128), 0),
    ("Dense", (None, 10), 1290),
]


def test_sequential_is_one_straight_stack_of_the_classic_shapes():
    model = ARCHITECTURES[Style.sequential]()
    assert isinstance(model, keras.Sequential)
    table = [(layer.__class__.__name__, tuple(layer.output.shape), layer.count_params())
             for layer in model.layers]
    assert table == SEQUENTIAL_TABLE
    assert model.count_params() == 242_218
    # The normalisation's moving mean and variance are the only weights not trained.
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 242_218 - 448


def test_functional_has_a_non_sequential_data_flow():
    model = ARCHITECTURES[Style.functional]()
    assert model.__class__.__name__ == "Functional"
    merges = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(merges) >= 1
    # A skip connection: the merge takes a tensor that also feeds another branch.
    assert all(len(layer._inbound_nodes[0].input_tensors) == 2 for layer in merges)
    assert model.count_params() == 251_962


def test_subclassed_model_is_a_class_with_its_own_call_and_config():
    model = ARCHITECTURES[Style.subclassed]()
    assert isinstance(model, SubclassedCNN) and type(model).call is not keras.Model.call
    assert model.count_params() <= 150_000
    clone = SubclassedCNN.from_config(model.get_config())
    clone.build((None, 28, 28, 1))
    assert clone.count_params() == model.count_params()
    assert clone.options == model.options


@pytest.mark.parametrize("style", list(Style))
def test_every_style_maps_images_to_probabilities(style):
    model = ARCHITECTURES[style]()
    probabilities = np.asarray(model(np.random.rand(3, 28, 28, 1).astype("float32")))
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("style", list(Style))
def test_layer_options_reach_the_layers(style):
    options = LayerOptions(activation="elu", kernel_initializer="he_normal", kernel_l2=1e-4)
    model = ARCHITECTURES[style](options)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer in dense + convs:
        assert layer.kernel_initializer.__class__.__name__ == "HeNormal"
        assert layer.kernel_regularizer is not None
    assert len(model.losses) == len(dense) + len(convs)  # one L2 penalty per kernel

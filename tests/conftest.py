"""Shared fixtures: small generated image folders (see tests/imagegen.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from imagegen import make_hazards, make_labelled, make_shapes  # noqa: E402


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """A nested folder of 3 classes x 6 generated images (JPEG, PNG, greyscale JPEG; several sizes)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, per_class=6)
    return root


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory) -> Path:
    """root/train/<class>/ and root/test/<class>/ of generated shapes."""
    return make_labelled(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="session")
def hazard_folder(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    """A folder of hazardous files and, for each, whether it should load."""
    root = tmp_path_factory.mktemp("hazards")
    return root, make_hazards(root)


@pytest.fixture
def fresh_shapes(tmp_path) -> Path:
    """A writable copy-per-test folder of generated shapes (for tests that change the folder)."""
    make_shapes(tmp_path / "photos", per_class=4)
    return tmp_path / "photos"


@pytest.fixture
def setup(tmp_path):
    """(store, labels, {class: [ids]}, index_dir): an index of 10 generated photos per class and its labels
    (the page's labels and exports tests)."""
    from test_search import make_index

    from app.labels import Labels
    from index.store import Store

    index_dir, by_class = make_index(tmp_path, per_class=10)
    store = Store.open(index_dir)
    labels = Labels(index_dir)
    yield store, labels, by_class, index_dir
    labels.close()
    store.close()

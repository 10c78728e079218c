"""Every config block of docs/reproduce.md passes the checks of ``wdr-pipe run`` (keys and values)."""
import re

import pytest

from helpers import REPO
from wdr_pipe.workflow import load_config, make_plan

DOC = REPO / "docs" / "reproduce.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_both_papers():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("text", BLOCKS, ids=["wdr-fgvc5", "vgg16-clothing"])
def test_block_makes_a_plan(text, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(text)
    plan = make_plan(load_config(path))
    assert plan.names()[0] == "fetch" and any(n.startswith("train.") for n in plan.names())

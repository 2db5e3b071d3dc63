"""The serving side of the market, in process: serve_knowledge names a knowledge folder by
RPC (indexed at once, the old folder's chunks gone, a bad folder refused), and a served
model says in the catalogue whether it has an on-chain lineage."""

from __future__ import annotations

import pytest

from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.serve.app import ServeApp, describe_model
from flockd.serve.rpc import ServeNamespace


async def test_serve_knowledge_names_a_folder_by_rpc(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a.md").write_text("The lighthouse keeper feeds the gulls at noon.")
    (second / "b.md").write_text("The ferry to the island leaves at dawn.")
    (second / "c.txt").write_text("Bicycles have two wheels.")
    app = ServeApp([])
    rpc = ServeNamespace(app, lambda: None, tmp_path / "index" / "knowledge.sqlite")
    assert (await rpc.serve_status())["knowledge"] is None
    assert await rpc.serve_knowledge(str(first)) == {"folder": str(first.resolve()), "added": 1, "changed": 0,
                                                     "removed": 0, "unchanged": 0, "chunks": 1}
    assert [h.file for h in app.index.search("gulls")] == ["a.md"]
    report = await rpc.serve_knowledge(str(second))
    assert (report["added"], report["removed"], report["chunks"]) == (2, 1, 2)
    assert app.index.search("gulls") == [] and [h.file for h in app.index.search("ferry")] == ["b.md"]
    status = await rpc.serve_status()
    assert (status["knowledge"], status["chunks"]) == (str(second.resolve()), 2)
    assert (await rpc.serve_reindex())["unchanged"] == 2
    with pytest.raises(RPCError) as info:
        await rpc.serve_knowledge(str(tmp_path / "missing"))
    assert info.value.code == INVALID_PARAMS and "not a directory" in info.value.message
    assert app.index.folder == second.resolve()  # a refused folder leaves the served one


async def test_serve_knowledge_needs_an_index_file() -> None:
    with pytest.raises(RPCError, match="no index file"):
        await ServeNamespace(ServeApp([]), lambda: None).serve_knowledge("/tmp")


def test_a_model_from_a_file_says_it_has_no_on_chain_lineage(tmp_path) -> None:
    from flockd.fl.checkpoint import save_checkpoint
    from flockd.fl.recipe import load_recipe
    from flockd.fl.tensors import model_state
    from flockd.serve.classifier import ServedClassifier

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model_state(load_recipe("digits-mlp").build_model(0)))
    model = ServedClassifier("digits", "digits-mlp", path)
    described = describe_model(model)
    assert described["lineage"] is None and "no on-chain lineage" in described["lineage_note"]
    model.listing = {"listing_id": 2, "task_id": 5, "lineage_root": "0x" + "ab" * 32, "rounds": 3,
                     "lister": "0x" + "01" * 20, "licence": "MIT"}
    described = describe_model(model)
    assert described["lineage"]["task_id"] == 5
    assert described["lineage_note"].startswith("listing 2 of task 5: 3 round(s) from 0xabababab")


def test_held_models_are_served_again_only_while_they_are_the_listed_model(tmp_path) -> None:
    from flockd.fl.checkpoint import save_checkpoint
    from flockd.fl.recipe import load_recipe
    from flockd.fl.tensors import model_state
    from flockd.market.held import HeldModels, served_models

    def path_of(digest: bytes):
        return tmp_path / "models" / f"{digest.hex()}.safetensors"

    (tmp_path / "models").mkdir()
    recipe = load_recipe("digits-mlp")
    scratch = tmp_path / "scratch.safetensors"
    digest = save_checkpoint(scratch, model_state(recipe.build_model(0)))
    scratch.rename(path_of(digest))
    held = HeldModels(tmp_path / "market")
    record = {"listing_id": 7, "name": "digits", "task_id": 3, "model_hash": "0x" + digest.hex(),
              "lineage_root": "0x" + "cd" * 32, "lister": "0x" + "02" * 20, "licence": "MIT",
              "spec": {"recipe": "digits-mlp", "config": {}}, "lineage": {"rounds_checked": 2}}
    held.save(record)
    held.save({**record, "listing_id": 8, "name": "lm", "spec": {"recipe": "no-such-recipe"}})
    (model,) = served_models(held, path_of)  # the unknown recipe is left out, not fatal
    assert (model.name, model.model_hash, model.listing["rounds"]) == ("digits", digest, 2)
    save_checkpoint(path_of(digest), model_state(recipe.build_model(1)))  # the file changed since
    assert served_models(held, path_of) == []

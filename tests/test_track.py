from lib import runs, track


def test_events_hold_every_epoch(tmp_path, synth, tiny_config):
    run = runs.get(tiny_config, synth, "g", tmp_path)
    df = track.read_scalars(run.tb_dir)
    tags = set(df.tag)
    assert {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "lr"} <= tags
    test_acc = df[df.tag == "accuracy/test"].sort_values("step")
    assert test_acc.step.tolist() == list(range(1, tiny_config.epochs + 1))
    assert abs(test_acc.value.iloc[-1] - run.summary["test_acc"]) < 1e-6


def test_flat_hparams():
    flat = track.flat_hparams({"model": {"hidden": [1, 2], "depth": 3}, "lr": 0.1, "n": None})
    assert flat == {"model.hidden": "[1, 2]", "model.depth": 3, "lr": 0.1, "n": "None"}

"""The trainable: the one merge of a trial's config, its device, and what it reports to Tune."""


def test_a_trial_without_gpus_trains_on_the_cpu():
    from service.trainable import claim_device

    assert claim_device(0.0) == "cpu"


def test_the_trainable_merges_fixed_fields_and_sampled_params_once():
    from search_spaces import merge_config

    config = merge_config({"epochs": 3, "t0": 0.0}, {"method": "finetune", "t0": 0.2}, cpus_per_trial=2)
    assert (config.method, config.t0, config.epochs, config.num_threads) == ("finetune", 0.2, 3, 2)


def test_each_epoch_reports_the_trainers_whole_dict_flat_for_tune_and_nested_for_the_store(monkeypatch):
    import ray
    import ray.util.metrics
    from ray import tune

    from service.trainable import EPOCH_REPORT, FIRST_REPORT, TUNE_KEYS, TrialMetrics, run_trial

    reported, gauges = [], {}

    class Gauge:  # records what the trial exports; the export itself is tested against a real node
        def __init__(self, name, description, tag_keys):
            self.values, gauges[name] = [], self
            self.tag_keys = tag_keys

        def set(self, value, tags):
            assert set(tags) == set(self.tag_keys)
            self.values.append((value, tags))

    monkeypatch.setattr(ray.util.metrics, "Gauge", Gauge)
    monkeypatch.setattr(TrialMetrics, "_gauges", {})
    monkeypatch.setattr(tune, "report", reported.append)  # the trainable outside a Tune session
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: "n1"})()
    )
    fixed = {"epochs": 2, "steps_per_epoch": 2, "n_target": 40, "batch_size": 16}
    study = {"study_id": "s1", "study_name": "demo"}
    run_trial(
        {"params": {"method": "mixup", "mixup_alpha": 0.4}, "run": {"number": 3}},
        fixed=fixed,
        cpus_per_trial=1,
        study=study,
    )
    *epochs, final = reported
    assert [e["epoch"] for e in epochs] == [1, 2] and final["final"]
    for e in epochs:
        report = e[EPOCH_REPORT]
        assert 0 <= report["mix_lambda"] <= 1  # the method's own key, beside the common ones
        # flat: only the keys Tune and the driver read (Tune keeps statistics of every flat key)
        assert {k: e[k] for k in TUNE_KEYS if k in report} == {k: report[k] for k in TUNE_KEYS if k in report}
        assert "mix_lambda" not in e and "best_val_acc" in e
    # where the attempt runs: told once, with its first report
    assert (epochs[0]["node_id"], epochs[0]["device"], epochs[0][FIRST_REPORT]) == ("n1", "cpu", True)
    assert "node_id" not in epochs[1] and not epochs[1][FIRST_REPORT] and "node_id" not in final
    # Live metrics, tagged with the study and the study's trial number.
    tags = {"study_id": "s1", "study_name": "demo", "trial": "3", "method": "mixup"}
    val_acc = gauges["transched_trial_val_acc"].values
    assert val_acc == [(e["val_acc"], tags) for e in epochs]
    assert [v for v, _ in gauges["transched_trial_epoch"].values] == [1, 2]
    assert [v for v, _ in gauges["transched_trial_lambda"].values] == [e["lambda"] for e in epochs]
    ((throughput, _),) = gauges["transched_trial_samples_per_second"].values  # from the second epoch on
    assert throughput > 0

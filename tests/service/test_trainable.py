"""The trainable: the one merge of a trial's config, its device, and what it reports to Tune."""


def test_a_trial_without_gpus_trains_on_the_cpu():
    from service.trainable import claim_device

    assert claim_device(0.0) == "cpu"


def test_the_trainable_merges_fixed_fields_and_sampled_params_once():
    from service.trainable import merge_config

    config = merge_config({"epochs": 3, "t0": 0.0}, {"method": "finetune", "t0": 0.2}, cpus_per_trial=2)
    assert (config.method, config.t0, config.epochs, config.num_threads) == ("finetune", 0.2, 3, 2)


def test_each_epoch_reports_the_trainers_whole_dict_flat_for_tune_and_nested_for_the_store(monkeypatch):
    import ray
    from ray import tune

    from service.trainable import EPOCH_REPORT, run_trial

    reported = []
    monkeypatch.setattr(tune, "report", reported.append)  # the trainable outside a Tune session
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: "n1"})()
    )
    fixed = {"epochs": 2, "steps_per_epoch": 2, "n_target": 40, "batch_size": 16}
    run_trial({"method": "mixup", "mixup_alpha": 0.4}, fixed=fixed, cpus_per_trial=1)
    *epochs, final = reported
    assert [e["epoch"] for e in epochs] == [1, 2] and final["final"]
    for e in epochs:
        report = e[EPOCH_REPORT]
        assert 0 <= report["mix_lambda"] <= 1  # the method's own key, beside the common ones
        assert {k: e[k] for k in report} == report
        assert e["node_id"] == "n1" and e["device"] == "cpu"

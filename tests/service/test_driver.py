from service.ray_cluster import resource_problem
from service.schemas import StudySpec


def test_a_study_asking_for_gpus_on_a_cpu_cluster_is_refused_with_a_clear_message():
    problem = resource_problem(StudySpec(gpus_per_trial=0.5), {"CPU": 2.0})
    assert "gpus_per_trial=0.5" in problem and "0 GPU" in problem


def test_fractional_gpus_fit_a_gpu_cluster_and_cpu_studies_fit_a_cpu_cluster():
    assert resource_problem(StudySpec(gpus_per_trial=0.25), {"CPU": 8.0, "GPU": 1.0}) is None
    assert resource_problem(StudySpec(), {"CPU": 2.0}) is None


def test_more_cpus_per_trial_than_the_cluster_has_is_refused():
    assert "cpus_per_trial=4" in resource_problem(StudySpec(cpus_per_trial=4), {"CPU": 2.0})


def test_custom_resources_must_exist_on_the_cluster():
    spec = StudySpec(resources_per_trial={"trial_slot": 1})
    assert "trial_slot" in resource_problem(spec, {"CPU": 2.0})
    assert resource_problem(spec, {"CPU": 2.0, "trial_slot": 2.0}) is None
    assert resource_problem(spec, {"CPU": 2.0}, gpus_only=True) is None
    assert "gpus_per_trial" in resource_problem(StudySpec(gpus_per_trial=1), {}, gpus_only=True)


def test_a_trial_without_gpus_trains_on_the_cpu():
    from service.trainable import claim_device

    assert claim_device(0.0) == "cpu"


def test_the_trainable_merges_fixed_fields_and_sampled_params_once():
    from service.trainable import merge_config

    config = merge_config({"epochs": 3, "t0": 0.0}, {"method": "finetune", "t0": 0.2}, cpus_per_trial=2)
    assert (config.method, config.t0, config.epochs, config.num_threads) == ("finetune", 0.2, 3, 2)


def test_with_ray_address_the_service_uses_that_cluster_and_starts_nothing(tmp_path):
    from service.ray_cluster import connect
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path, RAY_ADDRESS="10.1.2.3:6380", RAY_AUTH_TOKEN="tok")
    cluster = connect(settings)
    assert (cluster.dashboard_url, cluster.local) == ("http://10.1.2.3:8265", False)
    assert cluster.headers == {"Authorization": "Bearer tok"}
    assert not (tmp_path / "ray").exists()
    explicit = Settings(data_dir=tmp_path, RAY_ADDRESS="ray://h:10001", ray_dashboard_url="http://d:9000/")
    assert connect(explicit).dashboard_url == "http://d:9000"


def test_error_summary_keeps_the_exception_and_its_whole_message_and_drops_rays_tracebacks():
    from service.driver import error_summary

    ray_text = (
        "Failure # 1 (occurred at 2026-11-22_05-00-00)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
        "Traceback (most recent call last):\n"
        '  File "/x/trainers/data.py", line 1, in load\n'
        "    raise _not_found(name, root) from exc\n"
        "trainers.data.DatasetNotFoundError: dataset 'cifar10' not found in /d. To provide it, run\n"
        '    python -c "..."\n'
        "and copy what it writes into /d."
    )
    assert error_summary(ray_text) == (
        "DatasetNotFoundError: dataset 'cifar10' not found in /d. To provide it, run\n"
        '    python -c "..."\n'
        "and copy what it writes into /d."
    )
    assert error_summary("no exception named here") == "no exception named here"
    assert len(error_summary("ValueError: " + "x" * 5000)) == 2000


def test_cli_errors_are_one_clear_line_not_a_traceback(tmp_path):
    import json
    import subprocess
    import sys

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True)
        return out.returncode, out.stdout + out.stderr

    (tmp_path / "best.json").write_text(
        json.dumps({"config": {"target": "cifar10", "data_dir": str(tmp_path)}})
    )
    code, text = run("train", str(tmp_path / "best.json"))
    assert code != 0 and "Traceback" not in text
    assert "dataset 'cifar10' not found" in text and str(tmp_path) in text and "download=True" in text
    code, text = run("submit", str(tmp_path / "missing.json"))
    assert code != 0 and "Traceback" not in text and "missing.json" in text
    (tmp_path / "broken.json").write_text("{x")
    code, text = run("submit", str(tmp_path / "broken.json"))
    assert code != 0 and "Traceback" not in text and "not valid JSON" in text

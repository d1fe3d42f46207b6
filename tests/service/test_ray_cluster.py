"""The cluster handle: which cluster, and whether a study could ever be scheduled on it."""

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


def test_the_job_client_is_made_once_per_cluster(monkeypatch):
    import ray.job_submission

    from service.ray_cluster import RayCluster

    made = []
    monkeypatch.setattr(
        ray.job_submission, "JobSubmissionClient", lambda url, headers: made.append(url) or url
    )
    cluster = RayCluster("http://h:8265", local=False, token="t")
    assert cluster.client() == cluster.client() == "http://h:8265"
    assert made == ["http://h:8265"]


def test_a_studys_job_is_named_after_the_study_and_keeps_its_id():
    from service.ray_cluster import job_submission_id

    assert job_submission_id("ab12", "Office-31: A→W, N=10") == "transched-office-31-a-w-n-10-ab12"
    assert job_submission_id("ab12", "***") == "transched-ab12"
    assert len(job_submission_id("ab12", "x" * 200)) == len("transched--ab12") + 40


def test_the_dashboard_login_help_names_the_local_heads_token_file(tmp_path):
    from service.ray_cluster import dashboard_login_help
    from service.settings import Settings

    text = dashboard_login_help(Settings(data_dir=tmp_path, ray_dashboard_port=9123))
    token = tmp_path.resolve() / "ray" / "auth_token"
    assert "http://127.0.0.1:9123" in text and f"cat {token}" in text
    assert f"RAY_AUTH_TOKEN_PATH={token} ray get-auth-token" in text


def test_a_local_heads_driver_is_told_the_heads_own_gcs_address(monkeypatch, tmp_path):
    """Several Ray heads may run on one host: a driver joins the head that runs its job, by address."""
    import ray.job_submission

    from service.ray_cluster import RayCluster
    from service.schemas import StudySpec
    from service.settings import Settings

    submitted = []

    class Client:
        def __init__(self, url, headers):
            pass

        def submit_job(self, **kwargs):
            submitted.append(kwargs)
            return kwargs["submission_id"]

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    settings = Settings(data_dir=tmp_path)
    local = RayCluster("http://127.0.0.1:1", local=True, gcs_address="127.0.0.1:6391")
    local.submit_study(study_id="ab12", spec=StudySpec(), settings=settings)
    remote = RayCluster("http://h:8265", local=False)
    remote.submit_study(study_id="cd34", spec=StudySpec(), settings=settings)
    envs = [s["runtime_env"]["env_vars"] for s in submitted]
    assert envs[0]["TRANSCHED_RAY_GCS_ADDRESS"] == "127.0.0.1:6391"
    assert "TRANSCHED_RAY_GCS_ADDRESS" not in envs[1]  # a cluster's own head: the job's cluster ("auto")


def test_a_job_id_the_cluster_already_has_counts_as_submitted_and_attempts_name_their_jobs(
    monkeypatch, tmp_path
):
    import ray.job_submission

    from service.ray_cluster import RayCluster, job_submission_id
    from service.schemas import StudySpec
    from service.settings import Settings

    jobs: dict[str, str] = {}

    class Client:
        def __init__(self, url, headers):
            pass

        def submit_job(self, **kwargs):
            if kwargs["submission_id"] in jobs:  # what Ray's job API answers, through its client
                raise RuntimeError(
                    f"Request failed with status code 400: Job with submission_id {kwargs['submission_id']} "
                    "already exists. Please use a different submission_id."
                )
            jobs[kwargs["submission_id"]] = kwargs["entrypoint"]
            return kwargs["submission_id"]

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    cluster, settings = RayCluster("http://127.0.0.1:1", local=True), Settings(data_dir=tmp_path)
    first = cluster.submit_study(study_id="ab12", spec=StudySpec(name="s"), settings=settings)
    assert first == job_submission_id("ab12", "s") == "transched-s-ab12"
    assert cluster.submit_study(study_id="ab12", spec=StudySpec(name="s"), settings=settings) == first
    job = job_submission_id("ab12", "s", 2)
    assert job == "transched-s-ab12-r2"
    assert cluster.submit_study(
        study_id="ab12", spec=StudySpec(name="s"), settings=settings, job_id=job, attempt=2
    )
    assert len(jobs) == 2 and jobs[job].endswith("-m service.driver ab12 2")

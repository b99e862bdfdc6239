"""What gradfix adds to a Ray job's runtime_env (without Ray: the real-cluster tests
are in tests/deepspeed_releases/test_ray.py)."""

from gradfix.ray import gradfix_variables, job_variables, merged_runtime_env

DRIVER = {"GRADFIX": "1", "GRADFIX_DISABLE": "ds-zero2-offload-ga", "GRADFIX_LOG": "debug", "PATH": "/bin"}


def test_a_job_without_runtime_env_gets_the_gradfix_variables():
    merged, added = merged_runtime_env(None, DRIVER)
    assert merged == {"env_vars": {"GRADFIX": "1", "GRADFIX_DISABLE": "ds-zero2-offload-ga", "GRADFIX_LOG": "debug"}}
    assert added == merged["env_vars"]


def test_activated_by_import_only_still_passes_gradfix_1():
    assert gradfix_variables({"PATH": "/bin"}) == {"GRADFIX": "1"}


def test_what_the_user_set_is_kept_and_not_mutated():
    openrlhf = {"env_vars": {"TOKENIZERS_PARALLELISM": "true", "GRADFIX_LOG": "quiet"}, "working_dir": "."}
    merged, added = merged_runtime_env(openrlhf, DRIVER)
    assert merged["working_dir"] == "."
    assert merged["env_vars"] == {"TOKENIZERS_PARALLELISM": "true", "GRADFIX_LOG": "quiet", "GRADFIX": "1",
                                  "GRADFIX_DISABLE": "ds-zero2-offload-ga"}
    assert set(added) == {"GRADFIX", "GRADFIX_DISABLE"}
    assert openrlhf["env_vars"] == {"TOKENIZERS_PARALLELISM": "true", "GRADFIX_LOG": "quiet"}


def test_gradfix_0_for_the_workers_is_respected():
    merged, added = merged_runtime_env({"env_vars": {"GRADFIX": "0"}}, DRIVER)
    assert merged["env_vars"]["GRADFIX"] == "0" and "GRADFIX" not in added


def test_nothing_added_leaves_the_runtime_env_as_passed():
    user = {"env_vars": {"GRADFIX": "1"}, "pip": ["x"]}
    merged, added = merged_runtime_env(user, {"GRADFIX": "1"})
    assert merged is user and added == {}
    assert merged_runtime_env(None, {"GRADFIX": "1", "RAY_JOB_CONFIG_JSON_ENV_VAR": JOB}) == (None, {})


# What Ray's job supervisor gives the entrypoint of `ray job submit --runtime-env-json
# '{"env_vars": {"GRADFIX": "1"}}'`: Ray raises in ray.init when the driver's runtime_env
# sets one of these variables again, so gradfix must not add them.
JOB = '{"runtime_env": {"env_vars": {"GRADFIX": "1"}}, "metadata": {}}'


def test_a_submitted_jobs_own_variables_are_not_added_again():
    driver = {"GRADFIX": "1", "GRADFIX_LOG": "debug", "RAY_JOB_CONFIG_JSON_ENV_VAR": JOB}
    assert job_variables(driver) == {"GRADFIX"}
    merged, added = merged_runtime_env({"env_vars": {"TOKENIZERS_PARALLELISM": "true"}}, driver)
    assert added == {"GRADFIX_LOG": "debug"}
    assert merged["env_vars"] == {"TOKENIZERS_PARALLELISM": "true", "GRADFIX_LOG": "debug"}


def test_an_unreadable_job_config_adds_nothing_ray_could_refuse():
    assert merged_runtime_env(None, {"GRADFIX": "1", "RAY_JOB_CONFIG_JSON_ENV_VAR": "{not json"}) == (None, {})

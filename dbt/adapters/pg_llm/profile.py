"""Read a `pg_llm` target from profiles.yml the way dbt does, for commands run outside dbt
(``python -m dbt_pg_llm report``).

dbt's own machinery renders the profile (``env_var``, ``DBT_ENV_SECRET_*``, ``as_number``, ``--vars``,
the target named in the profile), so the command connects exactly where `dbt run` would. It lives in
the adapter package, not the engine: the engine never imports dbt (see docs/decisions/0014).

Defaults are dbt's: the project dir is the nearest folder up from the current one holding
dbt_project.yml; the profiles dir is ``DBT_PROFILES_DIR``, else the current folder if it holds
profiles.yml, else ``~/.dbt``; the profile is the project's ``profile:``; the target the profile's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ProfileProblem", "credentials_from_profile"]


class ProfileProblem(ValueError):
    """The profile cannot be read or is not a pg_llm target; the message says how to fix it."""


def _project_profile_name(project_dir: Path) -> str:
    from dbt.config.project import load_raw_project

    try:
        name = load_raw_project(str(project_dir)).get("profile")
    except Exception as exc:  # DbtProjectError & co: say where we looked
        raise ProfileProblem(f"cannot read {project_dir / 'dbt_project.yml'}: {exc}; "
                             "pass --project-dir or --profile") from None
    if not name:
        raise ProfileProblem(f"{project_dir / 'dbt_project.yml'} names no profile; pass --profile")
    return str(name)


def _vars(value) -> dict:
    if value is None or isinstance(value, Mapping):
        return dict(value or {})
    import yaml

    parsed = yaml.safe_load(value) if value.strip() else {}
    if not isinstance(parsed, dict):
        raise ProfileProblem(f"--vars: {value!r} is not a mapping, e.g. '{{my_var: 1}}'")
    return parsed


def credentials_from_profile(*, project_dir: str | None = None, profiles_dir: str | None = None,
                             target: str | None = None, profile: str | None = None,
                             cli_vars: Mapping[str, Any] | str | None = None):
    """The PgLlmCredentials of the target (``credentials.connect_autocommit()``, ``.llm_settings()``).
    ``cli_vars``: a mapping, or YAML text as dbt's ``--vars`` takes it."""
    from dbt.adapters.factory import load_plugin
    from dbt.cli.resolvers import default_profiles_dir, default_project_dir
    from dbt.config.profile import Profile, read_profile
    from dbt.config.renderer import ProfileRenderer
    from dbt_common.context import set_invocation_context

    set_invocation_context(os.environ)  # env_var() reads the environment through it
    cli_vars = _vars(cli_vars)
    project = Path(project_dir) if project_dir else default_project_dir()
    profiles = Path(profiles_dir or os.environ.get("DBT_PROFILES_DIR") or default_profiles_dir())
    name = profile or _project_profile_name(project)
    try:
        raw = read_profile(str(profiles))
        if name not in raw:
            raise ProfileProblem(f"no profile named {name!r} in {profiles / 'profiles.yml'}; "
                                 "pass --profiles-dir or --profile")
        target_name, data = Profile.render_profile(raw[name], name, target, ProfileRenderer(cli_vars))
        kind = data.pop("type", None)
        if kind != "pg_llm":
            raise ProfileProblem(f"target {target_name!r} of profile {name!r} has type {kind!r}; "
                                 "pick a target with type: pg_llm (--target)")
        credentials_class = load_plugin(kind)
        values = credentials_class.translate_aliases(data)
        credentials_class.validate(values)
        return credentials_class.from_dict(values)
    except ProfileProblem:
        raise
    except Exception as exc:  # dbt's profile errors (DbtProfileError, ValidationError, DbtRuntimeError)
        from dbt_pg_llm.errors import redact

        raise ProfileProblem(f"profile {name!r} in {profiles}: {redact(str(exc))}") from None

"""bertscale.secrets: URI credentials masked in everything printed, saved or logged."""

import pytest

from bertscale.config import to_dict
from bertscale.pretrain.config import PretrainConfig
from bertscale.secrets import redact, redact_uri, tracking_credentials_to_env


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://user:PASSWORD@127.0.0.1:5000", "http://user:***@127.0.0.1:5000"),
        (
            "postgresql+psycopg2://ml:s3cret@db/mlflow?sslmode=require",
            "postgresql+psycopg2://ml:***@db/mlflow?sslmode=require",
        ),
        (
            "postgresql://db/mlflow?sslmode=require&password=s3cret",
            "postgresql://db/mlflow?sslmode=require&password=***",
        ),
        ("https://ghp_TOKEN@host/x", "https://***@host/x"),  # a bare userinfo may be the token itself
        (
            "https://host/api?access_token=abc&X-Amz-Signature=def&page=2",
            "https://host/api?access_token=***&X-Amz-Signature=***&page=2",
        ),
        ("http://a@b:pw@host:1/", "http://a@b:***@host:1/"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),  # nothing secret: byte for byte as given
        ("file:///runs/mlartifacts", "file:///runs/mlartifacts"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_redact_finds_uris_in_text_and_nested_configs():
    text = "MLflow at http://u:hunter2@h:5000/#/x, db postgresql://db/m?password=hunter2 done"
    assert "hunter2" not in redact(text) and redact(text).endswith("done")
    nested = {"a": ["x", {"b": "http://u:hunter2@h"}], "n": 3, "p": None}
    assert redact(nested) == {"a": ["x", {"b": "http://u:***@h"}], "n": 3, "p": None}


def test_saved_and_logged_config_has_no_password():
    cfg = PretrainConfig()
    cfg.mlflow.tracking_uri = "http://user:hunter2@127.0.0.1:5000"
    assert to_dict(cfg)["mlflow"]["tracking_uri"] == "http://user:***@127.0.0.1:5000"


def test_tracking_credentials_move_to_mlflows_environment():
    env: dict[str, str] = {}
    assert (
        tracking_credentials_to_env("http://us%40r:p%3Aw@127.0.0.1:5000/x", env) == "http://127.0.0.1:5000/x"
    )
    assert env == {"MLFLOW_TRACKING_USERNAME": "us@r", "MLFLOW_TRACKING_PASSWORD": "p:w"}
    # a URI read back from a saved (masked) config keeps the credential already in the environment
    assert tracking_credentials_to_env("http://us:***@h:1", env) == "http://h:1"
    assert env["MLFLOW_TRACKING_PASSWORD"] == "p:w" and env["MLFLOW_TRACKING_USERNAME"] == "us"
    assert tracking_credentials_to_env("postgresql://u:p@db/m", env) == "postgresql://u:p@db/m"

"""Root conftest: the shared fixtures every suite reuses live in tests/fixtures/."""

pytest_plugins = [
    "fixtures.infra_services",
    "fixtures.kube_api",
    "fixtures.ansible_runner",
]

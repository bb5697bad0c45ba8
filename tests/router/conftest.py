from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "routing"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES

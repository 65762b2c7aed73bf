"""Suite-wide settings."""

from hypothesis import HealthCheck, settings

# These machines are shared: a property test is judged on what it finds, never on how
# long one example took.
settings.register_profile("tunneld", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tunneld")

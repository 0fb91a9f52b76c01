"""Real reward service processes for tests: the project's launcher (services.common.launcher), re-exported."""
from services.common.launcher import REPO_ROOT, RunningService, free_port, running_service, wait_ready

__all__ = ["REPO_ROOT", "RunningService", "free_port", "running_service", "wait_ready"]

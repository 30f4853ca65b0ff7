"""`python -m agent_svc`: run the agent service."""

from agent_svc.app import create_app
from shared.service import serve

serve("agent_svc", create_app, lambda settings: settings.agent_port)

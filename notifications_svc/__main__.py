"""`python -m notifications_svc`: run the notifications service."""

from notifications_svc.app import create_app
from shared.service import serve

serve("notifications_svc", create_app, lambda settings: settings.notifications_port)

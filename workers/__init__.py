"""The Celery app that worker processes run: ``celery -A workers.app worker``."""

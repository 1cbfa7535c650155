"""Many people on one platform: projects and their quotas, users, tokens, roles, the audit trail."""

"""Who is calling: keys with roles, the end user behind a chat backend, access grants, groups, the audit log."""

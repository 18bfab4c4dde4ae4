"""Authentication (API keys, JWT), scopes per RPC, and the caller's tenant."""

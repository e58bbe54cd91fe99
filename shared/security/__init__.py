"""Who may do what: tokens (auth, jwks), ACLs (acl) and the namespace ACLs every process holds in
memory (nsacls), values sealed at rest (crypto) and the keyring's start-up check, the rate limit."""

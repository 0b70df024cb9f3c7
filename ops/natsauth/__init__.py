"""NATS security for a fleet: accounts, nkey users and permissions per role.

- :mod:`transport.parties`: who is in the fleet (orchestrators, nodes and their fleets,
  cosigners, clients, auditors, operators), read from a JSON layout file;
- :mod:`ops.natsauth.permissions`: what each role may publish and subscribe to, and what the
  role accounts share with each other (pure);
- :mod:`ops.natsauth.nkey`: user nkeys (Ed25519 seeds in the NATS encoding);
- :mod:`ops.natsauth.tls`: a private CA and the server certificate for client TLS and routes;
- :mod:`ops.natsauth.render`: the server configuration text;
- :mod:`ops.natsauth.bundle`: writing and reading a directory of configs and credentials;
- :mod:`transport.credentials`: one party's connection options from its own seed file (and
  the CA), as every role's process connects;
- :mod:`ops.natsauth.connect`: connecting as a role of a bundle, and servers running its configs;
- :mod:`ops.natsauth.cli`: ``hsmfleet nats secure``.
"""

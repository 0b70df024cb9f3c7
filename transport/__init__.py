"""How the parties reach each other and run: NATS request/reply and serving through the inbound
gate, the outbox that signs what a party sends, the clients of the cosigners and of the vault,
the HTTP guard every party's listener sits behind, party credentials and logging set-up.

It sits on the protocol (:mod:`messages`) and below the services (node, cosigner, orchestrator
shell); nothing here decides what a message means.
"""

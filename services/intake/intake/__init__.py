"""intake (诉求受理): registers every appeal once (一次登记), whatever the channel, and keeps the citizen
informed. Owns the appeals and the only copy of citizens' personal data."""

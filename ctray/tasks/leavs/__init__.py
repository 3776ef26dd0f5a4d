"""LEAVS: organ x finding-type labels and urgency for abdominal CT reports."""

"""The audit trail: the writer (batched reads and denials), the chain that seals every record,
its walk and verification, adoption of unsealed rows, and pruning with a sealed prune record."""

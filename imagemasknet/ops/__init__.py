"""Running the app for others: training jobs, the lock, the retrain form, promotion, access, the audit log."""

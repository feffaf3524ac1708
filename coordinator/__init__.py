"""postroom coordinator: owns every post, job and lease; serves Publishing and WorkerGateway."""

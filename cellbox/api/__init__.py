"""HTTP routers, one per resource group of the Cell API."""

"""What the gateway and the model server share: copied into both images (the images' build
context is ``services/``), on the path of both processes beside their own package."""

"""MONAI Deploy app serving a generative bundle: a NIfTI label map in, the synthetic NIfTI image out.

    python -m apps.monai_deploy -i <label map .nii.gz or a folder of them> -o <output folder> -m <bundle folder>

See :mod:`apps.monai_deploy.app`.
"""

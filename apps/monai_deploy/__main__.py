"""``python -m apps.monai_deploy -i <in> -o <out> -m <bundle folder>`` (see :mod:`apps.monai_deploy.app`)."""

from apps.monai_deploy.app import main

if __name__ == "__main__":
    main()

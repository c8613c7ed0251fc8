from dpo_recipe.cli import main

main()

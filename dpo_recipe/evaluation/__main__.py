from dpo_recipe.evaluation.command import main

main()

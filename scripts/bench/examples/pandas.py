import pandas as pd
import numpy as np

# Create a sample dataset
data = {
    'name': ['Alice', 'Bob', 'Charlie', 'David'],
    'age': [25, 30, 35, 28],
    'score': [85, 90, 78, 92]
}

df = pd.DataFrame(data)

# Calculate statistics
print(f"Average age: {df['age'].mean()}")
print(f"Average score: {df['score'].mean()}")
print(f"\nTop scorer: {df.loc[df['score'].idxmax(), 'name']}")
